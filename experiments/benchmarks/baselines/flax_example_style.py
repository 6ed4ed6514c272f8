"""The baseline a JAX user starts from: a ResNet written the way the Flax ImageNet example
writes it (plain `nn.Conv`, `nn.BatchNorm`, `nn.max_pool`, JAX's own convolution gradients,
XLA's default flags). Written here for the benchmark, not copied; the same networks
(torchvision's v1.5 bottleneck, and He et al.'s CIFAR ResNet with projection shortcuts where
the shape changes) and the same multiply-add counts as resflax's."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax.numpy as jnp

SPECS = {  # blocks per stage, bottleneck?, stem ("imagenet" | "cifar"), base widths
    "resnet18": ((2, 2, 2, 2), False, "imagenet", (64, 128, 256, 512)),
    "resnet50": ((3, 4, 6, 3), True, "imagenet", (64, 128, 256, 512)),
    "resnet56": ((9, 9, 9), False, "cifar", (16, 32, 64)),
}


class Block(nn.Module):
    filters: int
    strides: int
    bottleneck: bool
    conv: nn.Module
    norm: nn.Module

    @nn.compact
    def __call__(self, x):
        out = self.filters * (4 if self.bottleneck else 1)
        s, p = (self.strides, self.strides), ((1, 1), (1, 1))
        if self.bottleneck:
            y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
            y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), s, padding=p)(y)))
            y = self.norm(scale_init=nn.initializers.zeros)(self.conv(out, (1, 1))(y))
        else:
            y = nn.relu(self.norm()(self.conv(out, (3, 3), s, padding=p)(x)))
            y = self.norm(scale_init=nn.initializers.zeros)(self.conv(out, (3, 3), padding=p)(y))
        if x.shape != y.shape:
            x = self.norm()(self.conv(out, (1, 1), s)(x))
        return nn.relu(x + y)


class FlaxExampleResNet(nn.Module):
    stage_sizes: tuple[int, ...]
    bottleneck: bool
    stem: str
    widths: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        if self.stem == "imagenet":
            x = conv(self.widths[0], (7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)
            x = nn.relu(norm()(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            x = nn.relu(norm()(conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)))(x)))
        for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                x = Block(w, strides, self.bottleneck, conv, norm)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def make(name: str, num_classes: int) -> FlaxExampleResNet:
    sizes, bottleneck, stem, widths = SPECS[name]
    return FlaxExampleResNet(sizes, bottleneck, stem, widths, num_classes)
