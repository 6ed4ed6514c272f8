"""Residual blocks: basic and bottleneck, post-activation (v1/v1.5) and pre-activation (v2).

A block gets `conv`, `norm` and `act` from its parent and decides only shapes and names:
`conv1`, `norm1`, ... in order of use, `proj_conv` / `proj_norm` for the shortcut, `se` for
squeeze-and-excitation. These names are part of the checkpoint format and weight conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn

from resflax.models.layers import (
    Array,
    ModuleDef,
    SqueezeExcite,
    conv_init,
    drop_path,
    pad,
    shortcut,
)
from resflax.models.norms import norm_act

STRIDE_ON = ("1x1", "3x3")


class ResidualBlock(nn.Module):
    """Fields shared by every block.

    features: the block's base width (planes); it outputs `features * expansion` channels.
    stride_on: bottlenecks only: "1x1" strides the first 1x1 (v1: the paper, Caffe, Keras),
        "3x3" strides the 3x3 (v1.5: torchvision, timm).
    groups, base_width: ResNeXt cardinality and width per group; wide ResNets double base_width.
    se_ratio: squeeze-and-excitation reduction (0 disables it).
    zero_init_last: start the residual branch at zero (last norm scale, or last conv in v2).
    deterministic: disables stochastic depth (set by the parent in eval mode).
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    strides: int = 1
    shortcut: str = "B"
    stride_on: str = "3x3"
    groups: int = 1
    base_width: int = 64
    se_ratio: float = 0.0
    zero_init_last: bool = True
    deterministic: bool = True

    expansion: ClassVar[int] = 1

    @property
    def out_features(self) -> int:
        return self.features * self.expansion

    def _last_init(self):
        return nn.initializers.zeros if self.zero_init_last else nn.initializers.ones

    def _finish(self, y: Array, drop_path_rate: float | Array | None) -> Array:
        if self.se_ratio:
            y = SqueezeExcite(ratio=self.se_ratio, dtype=y.dtype, act=self.act, name="se")(y)
        return drop_path(self, y, drop_path_rate, self.deterministic)

    def _bottleneck_plan(self) -> tuple[int, int, int]:
        """Inner width (torchvision's rule) and the strides of the first 1x1 and of the 3x3."""
        if self.stride_on not in STRIDE_ON:
            raise ValueError(f"stride_on={self.stride_on!r} is not one of {STRIDE_ON}")
        width = int(self.features * self.base_width / 64) * self.groups
        on_1x1 = self.stride_on == "1x1"
        return width, (self.strides if on_1x1 else 1), (1 if on_1x1 else self.strides)

    def _check_plain(self) -> None:
        if self.groups != 1 or self.base_width != 64:
            raise ValueError(
                f"basic blocks have no groups/base_width (got groups={self.groups}, "
                f"base_width={self.base_width}); use a bottleneck block"
            )


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (He et al. 2015, Fig. 2 left); stride on the first."""

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: float | Array | None = None) -> Array:
        self._check_plain()
        s = (self.strides, self.strides)
        y = self.conv(self.features, (3, 3), s, padding=pad(3), name="conv1")(x)
        y = norm_act(self.norm, self.act, name="norm1")(y)
        y = self.conv(self.features, (3, 3), padding=pad(3), name="conv2")(y)
        y = self.norm(scale_init=self._last_init(), name="norm2")(y)
        y = self._finish(y, drop_path_rate)
        r = shortcut(
            x, features=self.out_features, strides=self.strides, kind=self.shortcut,
            conv=self.conv, norm=self.norm,
        )  # fmt: skip
        return self.act(y + r)


class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (He et al. 2015, Fig. 5 right)."""

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: float | Array | None = None) -> Array:
        width, s1, s3 = self._bottleneck_plan()
        y = self.conv(width, (1, 1), (s1, s1), padding="VALID", name="conv1")(x)
        y = norm_act(self.norm, self.act, name="norm1")(y)
        y = self.conv(
            width, (3, 3), (s3, s3), padding=pad(3), feature_group_count=self.groups, name="conv2"
        )(y)
        y = norm_act(self.norm, self.act, name="norm2")(y)
        y = self.conv(self.out_features, (1, 1), padding="VALID", name="conv3")(y)
        y = self.norm(scale_init=self._last_init(), name="norm3")(y)
        y = self._finish(y, drop_path_rate)
        r = shortcut(
            x, features=self.out_features, strides=self.strides, kind=self.shortcut,
            conv=self.conv, norm=self.norm,
        )  # fmt: skip
        return self.act(y + r)


class PreActBasicBlock(ResidualBlock):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings"): norm-act-conv twice.

    A projection shortcut takes the normalised input and has no norm of its own.
    """

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: float | Array | None = None) -> Array:
        self._check_plain()
        s = (self.strides, self.strides)
        pre = norm_act(self.norm, self.act, name="norm1")(x)
        y = self.conv(self.features, (3, 3), s, padding=pad(3), name="conv1")(pre)
        y = norm_act(self.norm, self.act, name="norm2")(y)
        y = self.conv(
            self.features, (3, 3), padding=pad(3), kernel_init=_last_conv_init(self), name="conv2"
        )(y)
        y = self._finish(y, drop_path_rate)
        return y + _preact_shortcut(self, x, pre)


class PreActBottleneckBlock(ResidualBlock):
    """Pre-activation bottleneck (He et al. 2016): norm-act-conv for 1x1, 3x3, 1x1."""

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: float | Array | None = None) -> Array:
        width, s1, s3 = self._bottleneck_plan()
        pre = norm_act(self.norm, self.act, name="norm1")(x)
        y = self.conv(width, (1, 1), (s1, s1), padding="VALID", name="conv1")(pre)
        y = norm_act(self.norm, self.act, name="norm2")(y)
        y = self.conv(
            width, (3, 3), (s3, s3), padding=pad(3), feature_group_count=self.groups, name="conv2"
        )(y)
        y = norm_act(self.norm, self.act, name="norm3")(y)
        y = self.conv(
            self.out_features, (1, 1), padding="VALID", kernel_init=_last_conv_init(self),
            name="conv3",
        )(y)  # fmt: skip
        y = self._finish(y, drop_path_rate)
        return y + _preact_shortcut(self, x, pre)


def _last_conv_init(block: ResidualBlock):
    return nn.initializers.zeros if block.zero_init_last else conv_init


def _preact_shortcut(block: ResidualBlock, x: Array, pre: Array) -> Array:
    # Identity (and option A) pass the raw input on, so the signal path stays clean; a projection
    # reads the normalised input, as in He et al. 2016's code and timm's ResNetV2.
    reshapes = block.strides != 1 or x.shape[-1] != block.out_features
    projects = block.shortcut == "C" or (reshapes and block.shortcut in ("B", "D"))
    return shortcut(
        pre if projects else x, features=block.out_features, strides=block.strides,
        kind=block.shortcut, conv=block.conv, norm=None,
    )  # fmt: skip


BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneckBlock,
}


def get_block(kind: str, preact: bool) -> type[ResidualBlock]:
    key = f"preact_{kind}" if preact else kind
    if kind not in ("basic", "bottleneck"):
        raise ValueError(f"block={kind!r} is not one of ('basic', 'bottleneck')")
    return BLOCKS[key]


__all__ = [
    "BLOCKS",
    "BasicBlock",
    "BottleneckBlock",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResidualBlock",
    "get_block",
]
