"""Stems: the layers before the first residual stage."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from resflax.models.layers import Array, ModuleDef, pad
from resflax.models.norms import norm_act
from resflax.ops.policy import PLAIN, Ops

STEMS = ("imagenet", "cifar", "deep")


class Stem(nn.Module):
    """`imagenet`: 7x7/2 conv + 3x3/2 max-pool (He et al. 2015). `cifar`: one 3x3/1 conv
    (He et al. 2015 §4.2). `deep`: three 3x3 convs (widths w, w, 2w) + max-pool (ResNet-C/D).

    With `preact=True` the last convolution is left unnormalised: the first pre-activation
    block normalises its input itself. `ops` says how the first (strided) convolution and
    the max-pool are computed (`Ops.stem_conv`, `Ops.pool`): the same function either way.
    """

    kind: str
    width: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    preact: bool = False
    ops: Ops = PLAIN

    def _conv(self, width: int, k: int, s: int, name: str) -> ModuleDef:
        # Only the first convolution is strided, over the image's few channels: there a
        # space-to-depth form pays (resflax.ops.conv).
        extra = {"conv_general_dilated": self.ops.stem_conv_fn()} if s == 2 else {}
        return self.conv(width, (k, k), (s, s), padding=pad(k), name=name, **extra)

    def _max_pool(self, x: Array) -> Array:
        # (1, 1) padding with -inf: torchvision's MaxPool2d(3, 2, padding=1).
        return self.ops.max_pool(x, window=3, stride=2, padding=1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.kind not in STEMS:
            raise ValueError(f"stem={self.kind!r} is not one of {STEMS}")
        if self.kind == "deep":
            widths = (self.width, self.width, 2 * self.width)
            for i, (w, s) in enumerate(zip(widths, (2, 1, 1), strict=True), start=1):
                x = self._conv(w, 3, s, f"conv{i}")(x)
                if i < 3 or not self.preact:
                    x = norm_act(self.norm, self.act, name=f"norm{i}")(x)
            return self._max_pool(x)
        k, s = (7, 2) if self.kind == "imagenet" else (3, 1)
        x = self._conv(self.width, k, s, "conv")(x)
        if not self.preact:
            x = norm_act(self.norm, self.act, name="norm")(x)
        if self.kind == "imagenet":
            x = self._max_pool(x)
        return x
