"""Stems: the layers before the first residual stage."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from resflax.models.layers import Array, ModuleDef, pad
from resflax.models.pool import max_pool

STEMS = ("imagenet", "cifar", "deep")


def max_pool_3x3_s2(x: Array) -> Array:
    # (1, 1) padding with -inf: torchvision's MaxPool2d(3, 2, padding=1).
    return max_pool(x, window=3, stride=2, padding=1)


class Stem(nn.Module):
    """`imagenet`: 7x7/2 conv + 3x3/2 max-pool (He et al. 2015). `cifar`: one 3x3/1 conv
    (He et al. 2015 §4.2). `deep`: three 3x3 convs (widths w, w, 2w) + max-pool (ResNet-C/D).

    With `preact=True` the last convolution is left unnormalised: the first pre-activation
    block normalises its input itself.
    """

    kind: str
    width: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    preact: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.kind not in STEMS:
            raise ValueError(f"stem={self.kind!r} is not one of {STEMS}")
        if self.kind == "deep":
            widths = (self.width, self.width, 2 * self.width)
            for i, (w, s) in enumerate(zip(widths, (2, 1, 1), strict=True), start=1):
                x = self.conv(w, (3, 3), (s, s), padding=pad(3), name=f"conv{i}")(x)
                if i < 3 or not self.preact:
                    x = self.act(self.norm(name=f"norm{i}")(x))
            return max_pool_3x3_s2(x)
        k, s = (7, 2) if self.kind == "imagenet" else (3, 1)
        x = self.conv(self.width, (k, k), (s, s), padding=pad(k), name="conv")(x)
        if not self.preact:
            x = self.act(self.norm(name="norm")(x))
        if self.kind == "imagenet":
            x = max_pool_3x3_s2(x)
        return x
